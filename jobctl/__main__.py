import sys

from jobctl.fastpath import main

sys.exit(main())
