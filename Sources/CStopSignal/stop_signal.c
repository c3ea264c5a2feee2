#include "stop_signal.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t received;

static void record(int signal) {
    if (received == 0) received = signal;
}

static int set_action(void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    sigaddset(&action.sa_mask, SIGTERM);
    sigaddset(&action.sa_mask, SIGINT);
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGTERM, &action, 0) != 0) return -1;
    if (sigaction(SIGINT, &action, 0) != 0) return -1;
    return 0;
}

int stop_signal_install(void) { return set_action(record); }

void stop_signal_restore_default(void) { (void)set_action(SIG_DFL); }

int stop_signal_received(void) { return received; }
