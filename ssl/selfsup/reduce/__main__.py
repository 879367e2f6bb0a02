"""python -m selfsup.reduce"""

from selfsup.reduce.cli import main

main()
