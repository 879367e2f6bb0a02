"""python -m selfsup.evaluate"""

from selfsup.evaluate.cli import main

main()
