#!/usr/bin/env node
import { main } from '../dist/esm/manifest-cli.js';

process.exitCode = await main(process.argv.slice(2));
