from services.projector.service import main

main()
