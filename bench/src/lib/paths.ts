import * as path from 'node:path';

/** bench/dist when compiled (this file is bench/dist/lib/paths.js). */
export const DIST_DIR = path.resolve(__dirname, '..');
/** bench/ */
export const BENCH_DIR = path.resolve(DIST_DIR, '..');
export const RESULTS_DIR = path.join(BENCH_DIR, 'results');
