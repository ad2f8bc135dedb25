import sys

from jaxmerge.main import main

sys.exit(main())
