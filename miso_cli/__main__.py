from miso_cli.cli import main

main()
