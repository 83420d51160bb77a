"""`python -m ihecli` and the `ihe` command: Ctrl-C while the program is still loading is the
same one line and exit status as later (not a traceback)."""
import sys


def run() -> None:
    try:
        from ihecli.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("ihe: error: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
