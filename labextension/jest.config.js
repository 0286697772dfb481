// The extension's unit tests: the pure parts (how a slice and a job are worded, how a log is
// followed) in TypeScript through ts-jest, as the JupyterLab extension template runs them.
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  },
  testRegex: '\\.spec\\.ts$'
};
