/* Does a large non-blocking send move while its sender computes?
 *
 * Rank 1 posts MPI_Isend of N floats to rank 0, then computes for 20 ms without calling MPI, then
 * waits. Rank 0 has posted its receive before the send and prints when it completed, from the
 * barrier: about 2 ms if the message moved at once, about 22 ms if it needed its sender inside MPI.
 *
 *   mpicc -O2 scripts/send-progress.c -o /tmp/send-progress
 *   mpirun -np 2 /tmp/send-progress 32768                                              # CMA (default)
 *   mpirun -np 2 --mca btl_vader_single_copy_mechanism none /tmp/send-progress 32768   # as Distributed runs
 *
 * (README, Scaling against the machine's limit: why a pipeline stage waits for its sends before
 * its batched weight pass.)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int n = argc > 1 ? atoi(argv[1]) : 32768;
    if (size != 2 || n <= 0) {
        if (rank == 0) fprintf(stderr, "error: run on 2 ranks with a positive float count\n");
        MPI_Finalize();
        return 2;
    }
    float *buffer = calloc((size_t)n, sizeof(float));
    for (int repeat = 0; repeat < 4; repeat++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime(), sent = 0;
        if (rank == 1) {
            volatile double x = 0;
            while (MPI_Wtime() - start < 0.002) x += 1;  /* the receive is posted by now */
            MPI_Request request;
            sent = MPI_Wtime();
            MPI_Isend(buffer, n, MPI_FLOAT, 0, 7, MPI_COMM_WORLD, &request);
            while (MPI_Wtime() - sent < 0.020) x += 1;  /* 20 ms of compute, no MPI call */
            MPI_Wait(&request, MPI_STATUS_IGNORE);
        }
        if (rank == 0) {
            MPI_Recv(buffer, n, MPI_FLOAT, 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double done = MPI_Wtime();
            printf("%d bytes: receive completed %.2f ms after the barrier (sent at 2 ms)\n",
                   4 * n, 1e3 * (done - start));
        }
    }
    free(buffer);
    MPI_Finalize();
    return 0;
}
