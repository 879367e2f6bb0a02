"""python -m selfsup.export"""

from selfsup.export import main

main()
