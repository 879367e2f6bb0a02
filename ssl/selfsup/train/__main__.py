"""python -m selfsup.train"""

from selfsup.train.cli import main

main()
