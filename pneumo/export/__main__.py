"""``python -m pneumo.export ...``: the same command as ``pneumo-export`` (``pneumo.cli.export``)."""

from pneumo.cli.export import main

if __name__ == "__main__":
    main()
