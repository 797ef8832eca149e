"""One psycopg2 session for clients_test.go.

argv[1] is a libpq connection string. Each line of stdin is run as a
query; a result prints "ROW <first column>", an error prints
"ERROR <sqlstate> <message>" and exits 3.
"""
import sys

import psycopg2


def one_line(s):
    return " ".join(str(s).split())


def main():
    try:
        conn = psycopg2.connect(sys.argv[1])
    except psycopg2.Error as e:
        print("ERROR", e.pgcode or "-", one_line(e), flush=True)
        sys.exit(3)
    conn.autocommit = True
    cur = conn.cursor()
    for line in sys.stdin:
        try:
            cur.execute(line)
            print("ROW", cur.fetchone()[0], flush=True)
        except psycopg2.Error as e:
            print("ERROR", e.pgcode or "-", one_line(e), flush=True)
            sys.exit(3)


main()
