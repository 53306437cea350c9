import sys

from ftpd.cli import main

sys.exit(main())
