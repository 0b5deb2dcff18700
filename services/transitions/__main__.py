from runledger.services.transitions.service import main

main()
