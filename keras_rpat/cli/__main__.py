"""`python -m keras_rpat.cli` (what `torchrun ... -m keras_rpat.cli train ...` runs on each rank)."""

from keras_rpat.cli import main

if __name__ == "__main__":
    main()
