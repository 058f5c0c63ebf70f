"""`python -m keras_rpat`: the `keras-rpat` command line."""

from keras_rpat.cli import main

if __name__ == "__main__":
    main(prog_name="keras-rpat")
