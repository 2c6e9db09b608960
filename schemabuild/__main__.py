from schemabuild.cli import main

main()
