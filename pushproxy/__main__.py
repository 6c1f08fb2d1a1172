from pushproxy.cli import main

raise SystemExit(main())
