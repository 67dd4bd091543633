// Container health check: GET HEALTH_PATH (default /health; the example's runs SELECT 1 through the socket).
'use strict';
const http = require('http');
const req = http.get(
  { host: '127.0.0.1', port: Number(process.env.PORT || 3000), path: process.env.HEALTH_PATH || '/health', timeout: 4000 },
  (res) => {
    res.resume();
    process.exit(res.statusCode === 200 ? 0 : 1);
  }
);
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => process.exit(1));
