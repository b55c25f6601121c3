from ctxlm.cli import main

main()
