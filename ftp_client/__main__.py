import sys

from ftp_client.cli import main

sys.exit(main())
