from runledger.services.ingress.app import main

main()
