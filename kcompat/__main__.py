from kcompat.cli import main

main()
