"""Entry point of `python -m examples.digits`."""

from .main import main

if __name__ == "__main__":
    main()
