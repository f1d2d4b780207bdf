from durakit.cli import main

main()
