"""concurrent.futures.ProcessPoolExecutor with no mp_context: the default context's
queues, switched by the patch (run through `python -m mpsysv run`)."""

import concurrent.futures
import math
import sys

PRIMES = [112272535095293, 112582705942171, 112272535095293, 115280095190773]


def is_prime(n):
    if n % 2 == 0:
        return False
    for i in range(3, int(math.isqrt(n)) + 1, 2):
        if n % i == 0:
            return False
    return True


def main():
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        print("queue type:", type(executor._result_queue).__module__)
        for number, prime in zip(PRIMES[:2], executor.map(is_prime, PRIMES[:2])):
            print(f"{number} is prime: {prime}")
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)


if __name__ == "__main__":
    main()
