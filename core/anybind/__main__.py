from anybind.cli import main

main()
