"""Entry point of `python -m scoredyn.demo`."""

from ._main import main

if __name__ == "__main__":
    main()
