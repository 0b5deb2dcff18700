from services.transitions.service import main

main()
