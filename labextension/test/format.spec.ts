import {
  canFetch,
  changedStates,
  detailWords,
  elapsedWords,
  fetchCellSource,
  IJob,
  ISlice,
  memoryWords,
  modelWords,
  runtimeWords,
  shareWords,
  sliceLabel
} from '../src/format';

const slice = (fields: Partial<ISlice>): ISlice => ({
  profile: 'a100-1-8',
  milli_gpu: 125,
  gpus: 1,
  memory_mib: 10240,
  model: 'A100-80GB',
  simulated: false,
  ...fields
});

describe('the slice in the status bar', () => {
  it('says the share, the model and the memory as the profiles do', () => {
    expect(sliceLabel(slice({}))).toBe('1/8 A100 · 10 GB');
    expect(sliceLabel(slice({ milli_gpu: 250, memory_mib: 20480, model: 'NVIDIA A100-SXM4-80GB' }))).toBe(
      '1/4 A100 · 20 GB'
    );
    expect(sliceLabel(slice({ milli_gpu: 1000, memory_mib: 81920 }))).toBe('1 A100 · 80 GB');
    expect(sliceLabel(slice({ milli_gpu: 2000, gpus: 2, memory_mib: 163840 }))).toBe('2 × A100 · 160 GB');
  });

  it('shows the memory in use where it is known, and says when the GPU is simulated', () => {
    expect(sliceLabel(slice({ memory_used_mib: 3584 }))).toBe('1/8 A100 · 3.5 GB of 10 GB');
    expect(sliceLabel(slice({ simulated: true }))).toBe('1/8 A100 · 10 GB (simulated)');
  });

  it('says CPU only for a server without a slice, and the profile when the model is unknown', () => {
    expect(sliceLabel(null)).toBe('CPU only');
    expect(sliceLabel(slice({ milli_gpu: 0, memory_mib: 0 }))).toBe('CPU only');
    expect(sliceLabel(slice({ model: '' }))).toBe('1/8 a100-1-8 · 10 GB');
  });

  it('words shares, memory and models', () => {
    expect([125, 200, 333, 500, 1000, 2500].map(shareWords)).toEqual(['1/8', '1/5', '333/1000', '1/2', '1', '5/2']);
    expect([10240, 5120, 1536, 512].map(memoryWords)).toEqual(['10 GB', '5 GB', '1.5 GB', '0.5 GB']);
    expect(['NVIDIA H100 80GB HBM3', 'A100-80GB', 'T4'].map(modelWords)).toEqual(['H100', 'A100', 'T4']);
  });
});

describe('a job in the panel', () => {
  const job = (fields: Partial<IJob>): IJob => ({ id: 'job-abc', state: 'queued', ...fields });

  it('shows a queued job\'s position and reason', () => {
    expect(detailWords(job({ queue_position: 0, jobs_ahead: 3, waiting_reason: 'no free GPU' }))).toBe(
      'position 0 (3 jobs ahead in the queue) · no free GPU'
    );
    expect(detailWords(job({ queue_position: 2 }))).toBe('position 2');
  });

  it('shows why a job ended unless it succeeded, and that a preempted one checkpoints', () => {
    expect(detailWords(job({ state: 'failed', reason: 'the script exited with code 1' }))).toBe(
      'the script exited with code 1'
    );
    expect(detailWords(job({ state: 'succeeded', reason: 'the script exited with code 0' }))).toBe('');
    expect(detailWords(job({ state: 'preempted', reason: 'a slice needs the GPU' }))).toBe(
      'checkpointing: a slice needs the GPU'
    );
  });

  it('counts the runtime until now while running, and in all once ended', () => {
    expect(runtimeWords(job({ state: 'queued' }), 1000)).toBe('');
    expect(runtimeWords(job({ state: 'running', started_at: 1000 }), 4725)).toBe('1:02:05');
    expect(runtimeWords(job({ state: 'succeeded', started_at: 1000, ended_at: 1042 }), 9999)).toBe('0:00:42');
    expect(elapsedWords(-5)).toBe('0:00:00');
  });

  it('offers a fetch cell for an ended cell job only', () => {
    expect(canFetch(job({ state: 'succeeded', payload_kind: 'cell' }))).toBe(true);
    expect(canFetch(job({ state: 'failed', payload_kind: 'cell' }))).toBe(true);
    expect(canFetch(job({ state: 'running', payload_kind: 'cell' }))).toBe(false);
    expect(canFetch(job({ state: 'succeeded', payload_kind: 'script' }))).toBe(false);
    expect(fetchCellSource(job({}))).toBe('%job fetch job-abc');
  });

  it('finds the jobs whose state changed between two listings', () => {
    const before = [job({ id: 'a', state: 'queued' }), job({ id: 'b', state: 'running' })];
    const after = [job({ id: 'c' }), job({ id: 'a', state: 'running' }), job({ id: 'b', state: 'running' })];
    expect(changedStates(before, after)).toEqual(['c', 'a']);
  });
});
