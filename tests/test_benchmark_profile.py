"""launch/benchmark.py --mode=profile: reading XLA's instructions, grouping, attributing."""

import pytest

from fgjax import benchmark_lib
from fgjax import benchmark_profile as bp

# A compiled module's text as XLA:CPU prints it, cut down: two fusions and a plain op.
_HLO = '''HloModule jit__fun, entry_computation_layout={()->f32[]}

%fused_computation.7 (param_0.1: f32[2,8,8,4], param_1.2: f32[3,3,4,4]) -> f32[2,8,8,4] {
  %param_0.1 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %param_1.2 = f32[3,3,4,4]{3,2,1,0} parameter(1)
  ROOT %convolution.3 = f32[2,8,8,4]{3,2,1,0} convolution(%param_0.1, %param_1.2), window={size=3x3}, dim_labels=b01f_01io->b01f
}

%fused_computation.9 (param_0.5: f32[2,8,8,4]) -> f32[4,128] {
  %param_0.5 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %transpose.1 = f32[4,2,8,8]{0,3,2,1} transpose(%param_0.5), dimensions={3,0,1,2}
  %copy.2 = f32[4,2,8,8]{3,2,1,0} copy(%transpose.1)
  ROOT %bitcast.4 = f32[4,128]{1,0} bitcast(%copy.2)
}

%wrapped_iota_computation (param_0.9: f32[4,128]) -> s32[4,128] {
  ROOT %iota.2 = s32[4,128]{1,0} iota(), iota_dimension=1, metadata={op_name="jit(_fun)/transpose(jvp(FDL))/backbone/max_pool/iota"}
}

ENTRY %main.10 (Arg_0.1: f32[2,8,8,4], Arg_1.2: f32[3,3,4,4]) -> f32[4,128] {
  %Arg_0.1 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %Arg_1.2 = f32[3,3,4,4]{3,2,1,0} parameter(1)
  %ynn_fusion.4 = f32[2,8,8,4]{3,2,1,0} fusion(%Arg_0.1, %Arg_1.2), kind=kCustom, calls=%fused_computation.7, metadata={op_name="jit(_fun)/transpose(jvp(FDL))/backbone/stage2_block1/conv2/conv_general_dilated" source_file="x.py"}
  %copy_bitcast_fusion.2 = f32[4,128]{1,0} fusion(%ynn_fusion.4), kind=kLoop, calls=%fused_computation.9, metadata={op_name="jit(_fun)/jvp(FDL)/navigator/jit(_where)/transpose"}
  ROOT %wrapped_iota.1 = s32[4,128]{1,0} fusion(%copy_bitcast_fusion.2), kind=kLoop, calls=%wrapped_iota_computation
}
'''


def test_instructions_and_their_groups_from_a_compiled_module():
  instructions = bp.hlo_instructions(_HLO)
  conv, layout = instructions['ynn_fusion.4'], instructions['copy_bitcast_fusion.2']
  assert conv['op'] == 'fusion' and conv['body_ops'] == ['parameter', 'parameter', 'convolution']
  assert layout['body_ops'] == ['parameter', 'transpose', 'copy', 'bitcast']
  assert bp.group_of('ynn_fusion.4', conv) == ('backbone/stage2_block1', 'backward',
                                               'convolution')
  assert bp.group_of('ynn_fusion.4', conv, depth=3) == ('backbone/stage2_block1/conv2',
                                                        'backward', 'convolution')
  # JAX function scopes ('jit(_where)', leading underscore) are not places of their own.
  assert bp.group_of('copy_bitcast_fusion.2', layout) == ('navigator', 'forward',
                                                          'copy_bitcast')
  # Without metadata of its own, a fusion has the op_name of what it computes.
  assert bp.group_of('wrapped_iota.1', instructions['wrapped_iota.1']) == (
      'backbone/max_pool', 'backward', 'iota')


def test_attribute_sums_each_group_over_steps_and_ignores_other_events():
  instructions = bp.hlo_instructions(_HLO)
  events = [{'name': 'ynn_fusion.4', 'ph': 'X', 'dur': 3000.0},
            {'name': 'ynn_fusion.4', 'ph': 'X', 'dur': 5000.0},
            {'name': 'copy_bitcast_fusion.2', 'ph': 'X', 'dur': 2000.0},
            {'name': 'ThunkExecutor::Execute', 'ph': 'X', 'dur': 99000.0}]
  groups = bp.attribute(events, instructions, steps=2)
  assert [(g['where'], g['what']) for g in groups] == [
      ('backbone/stage2_block1', 'convolution'), ('navigator', 'copy_bitcast')]
  assert groups[0]['ms_per_step'] == pytest.approx(4.0)  # (3 + 5) ms over 2 steps.
  assert groups[1]['ms_per_step'] == pytest.approx(1.0)
  assert groups[0]['share'] == pytest.approx(0.8) and groups[1]['share'] == pytest.approx(0.2)


def test_a_missing_trace_is_named():
  with pytest.raises(FileNotFoundError, match='No .*trace.json.gz under /nonexistent'):
    bp.trace_events('/nonexistent')


def test_profile_of_a_real_step_finds_the_backbones_convolutions(tmp_path):
  records = benchmark_lib.run_mode('profile', {
      'models': 'fdl', 'backbone': 'resnet_tiny', 'image_size': 64, 'batch_size': 2,
      'steps': 1, 'warmup': 1, 'top': 1000, 'trace_dir': str(tmp_path)})
  records = [r for r in records if r['mode'] == 'profile']  # After the machine's record.
  assert records and {r['model'] for r in records} == {'fdl'}
  assert sum(r['share'] for r in records) == pytest.approx(1.0)
  assert sum(r['ms_per_step'] for r in records) == pytest.approx(records[0]['traced_ms_per_step'])
  convs = {(r['where'].split('/')[0], r['direction']) for r in records
           if r['what'] == 'convolution'}
  # The backbone convolves forward and backward (the train step differentiates it).
  assert {('backbone', 'forward'), ('backbone', 'backward')} <= convs
  assert (tmp_path / 'fdl').is_dir()
  assert 'profile' in benchmark_lib.format_table(records)
