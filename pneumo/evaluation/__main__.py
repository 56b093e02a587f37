"""``python -m pneumo.evaluation ...``: the same command as ``pneumo-evaluate`` (``pneumo.cli.evaluate``)."""

from pneumo.cli.evaluate import main

if __name__ == "__main__":
    main()
