import sys

from fleet_mcp.cli import main

sys.exit(main())
