from condenser.cli import main

main()
