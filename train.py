"""Train a chest X-ray pneumonia classifier: ``python train.py [overrides]`` (see README and conf/)."""

from pneumo.cli.train import main

if __name__ == "__main__":
    main()
