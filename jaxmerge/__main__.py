import sys

from jaxmerge.cli.main import main

sys.exit(main())
