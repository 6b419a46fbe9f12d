"""The single binary's entry point (PyInstaller runs this file as ``__main__``)."""

from rtserver.cli import main

raise SystemExit(main())
