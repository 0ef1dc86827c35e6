import sys

from avatar3d.cli import main

sys.exit(main())
