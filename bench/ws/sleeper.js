// A job that stays running (until cancelled or the server stops) and prints nothing.
setTimeout(() => {}, 30 * 60 * 1000);
