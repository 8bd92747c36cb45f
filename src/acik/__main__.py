from acik.cli import main

raise SystemExit(main())
