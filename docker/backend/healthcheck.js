// Container health check: GET /health, which runs SELECT 1 through the socket.
'use strict';
const http = require('http');
const req = http.get(
  { host: '127.0.0.1', port: Number(process.env.PORT || 3000), path: '/health', timeout: 4000 },
  (res) => {
    res.resume();
    process.exit(res.statusCode === 200 ? 0 : 1);
  }
);
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => process.exit(1));
