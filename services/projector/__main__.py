from runledger.services.projector.service import main

main()
