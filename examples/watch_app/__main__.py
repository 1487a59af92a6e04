from examples.watch_app.app import main

main()
