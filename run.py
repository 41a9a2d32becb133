"""Entry point: `python run.py` serves; `python run.py --help` lists the other commands."""

from app.cli import main

if __name__ == "__main__":
    main()
