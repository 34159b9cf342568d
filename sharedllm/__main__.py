from sharedllm.cli import main

main()
