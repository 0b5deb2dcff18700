from runledger.services.logs.service import main

main()
