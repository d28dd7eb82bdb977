/* The static musl program of the speed corpus's multi-runtime image (bench/speed_corpus.py):
   built with `musl-gcc -static`, it starts a thread and prints, as small static tools do. */
#include <pthread.h>
#include <stdio.h>

static void *work(void *arg) { return arg; }

int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, work, NULL) != 0) return 1;
    pthread_join(t, NULL);
    puts("hello from static musl");
    return 0;
}
