from runledger.services.scheduling.service import main

main()
