"""`python -m lengthwise ...`: the CLI where no console script is installed (e.g. PYTHONPATH=src)."""
from .cli import main

if __name__ == "__main__":
    main()
