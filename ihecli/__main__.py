from ihecli.cli import main

main()
