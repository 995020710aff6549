"""Breast Segmentation: breast region and lesion segmentation of breast DCE-MRI in 3D Slicer.

A thin face over BreastSegmentationLib. The inputs are written to a temporary folder, ``breastseg segment`` runs
in a background PythonSlicer process (the GUI stays responsive, progress is read from its JSON lines, Cancel ends
it), and the outputs are read back through the library into a segmentation and table nodes.
"""

import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addLibraryToPath() -> None:
    """Make BreastSegmentationLib importable: it is beside this file when installed (Slicer adds that folder to the
    path), in the parent folder in a source checkout."""
    moduleFolder = Path(__file__).resolve().parent
    for folder in (moduleFolder, moduleFolder.parent):
        if (folder / "BreastSegmentationLib").is_dir():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return
    raise ImportError(f"BreastSegmentationLib was found neither in {moduleFolder} nor in its parent folder")


_addLibraryToPath()

from BreastSegmentationLib import background, resources, scene  # noqa: E402
from BreastSegmentationLib.io.geometry import kji_from_image  # noqa: E402
from BreastSegmentationLib.io.images import read_image  # noqa: E402

#
# BreastSegmentation
#


class BreastSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Breast Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["BreastSegmentation contributors"]
        self.parent.helpText = _(
            "Segments the breast region and breast lesions in DCE-MRI from a pre-contrast and the first "
            "post-contrast volume, and lists the lesions (volume, longest diameter, centroid, enhancement). "
            "With a reference lesion segmentation it also reports Dice, IoU, precision, recall, HD95 and false "
            "positives and negatives by lesion volume. The first run installs PyTorch and MONAI after asking."
        )
        self.parent.acknowledgementText = _(
            "Method after breast lesion segmentation with breast region segmentation first (UNet++ on the breast "
            "region) and BRS with active learning (FCN-ResNet50). Packaged as a 3D Slicer extension with MONAI."
        )


#
# BreastSegmentationParameterNode
#


@parameterNodeWrapper
class BreastSegmentationParameterNode:
    """Inputs, options and the latest results of the module."""

    preContrastVolume: vtkMRMLScalarVolumeNode
    postContrastVolume: vtkMRMLScalarVolumeNode
    referenceSegmentation: vtkMRMLSegmentationNode
    useUserModels: bool = False
    userModelsFolder: Path
    device: Annotated[str, Choice(list(background.DEVICE_CHOICES))] = "auto"
    mixedPrecision: bool = False
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = resources.bundled_lesion_threshold()
    outputSegmentation: vtkMRMLSegmentationNode
    lesionTable: vtkMRMLTableNode
    overlapTable: vtkMRMLTableNode
    detectionTable: vtkMRMLTableNode


#
# BreastSegmentationWidget
#


class BreastSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    AUTO_SELECT_DELAY_MS = 500

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._autoSelectTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BreastSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BreastSegmentationLogic()
        self.ui.progressBar.hide()

        # Volumes of a study arrive one by one: choose pre and post once the loading has settled.
        self._autoSelectTimer = qt.QTimer()
        self._autoSelectTimer.setSingleShot(True)
        self._autoSelectTimer.setInterval(self.AUTO_SELECT_DELAY_MS)
        self._autoSelectTimer.connect("timeout()", self.autoSelectVolumes)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.lesionTableView.connect("selectionChanged()", self.onLesionSelected)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event) -> None:
        self._autoSelectTimer.start()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.autoSelectVolumes()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.showDeviceNames()
            self.updateGui()

    def showDeviceNames(self) -> None:
        """Name the GPU in the device menu (its items are the Choice values the parameter node connected)."""
        gpuNames = self.logic.gpuNames()
        for index, device in enumerate(background.DEVICE_CHOICES):
            self.ui.deviceComboBox.setItemText(index, background.device_label(device, gpuNames))

    def autoSelectVolumes(self) -> None:
        parameters = self._parameterNode
        if parameters and not (parameters.preContrastVolume and parameters.postContrastVolume):
            pre, post = self.logic.guessPrePostVolumes()
            if pre and not parameters.preContrastVolume:
                parameters.preContrastVolume = pre
            if post and not parameters.postContrastVolume:
                parameters.postContrastVolume = post

    def updateGui(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if not parameters:
            return
        self.ui.userModelsDirectoryButton.enabled = parameters.useUserModels
        # The inputs of a running segmentation stay as they are until its results are loaded.
        self.ui.inputsCollapsibleButton.enabled = self.ui.modelCollapsibleButton.enabled = self._run is None
        if self._run:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation")
            self.ui.applyButton.enabled = not self._run.cancelRequested
        else:
            ready = bool(parameters.preContrastVolume and parameters.postContrastVolume)
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = _("Segment the breast region and the lesions") if ready else _(
                "Select the pre- and post-contrast volumes")
            self.ui.applyButton.enabled = ready
        self.ui.lesionTableView.setMRMLTableNode(parameters.lesionTable)
        self.ui.overlapTableView.setMRMLTableNode(parameters.overlapTable)
        self.ui.detectionTableView.setMRMLTableNode(parameters.detectionTable)
        self.ui.evaluationCollapsibleButton.visible = parameters.overlapTable is not None

    def onApplyButton(self) -> None:
        if self._run:
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self.updateGui()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                self.ui.statusLabel.text = _("The Python packages needed for segmentation were not installed.")
                return
            self.showDeviceNames()
            request = self.logic.prepareRequest(self._parameterNode)
            self.startRun(request)

    def startRun(self, request) -> None:
        self._run = self.logic.startSegmentation(request, self.onProgress, self.onRunFinished)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat(_("Starting..."))
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Segmenting on {device}...").format(
            device=background.device_label(request.device, self.logic.gpuNames()))
        self.updateGui()

    def onProgress(self, event) -> None:
        self.ui.progressBar.setValue(round(event.done * 100))
        self.ui.progressBar.setFormat(f"{background.stage_title(event.stage)}: %p%")

    def onRunFinished(self, run) -> None:
        self._run = None
        self.ui.progressBar.hide()
        failure = run.failure
        rerunOnCpu = False
        try:
            if failure is None:
                with slicer.util.tryWithErrorDisplay(_("Failed to load the results."), waitCursor=True):
                    results = self.logic.loadResults(run.request, self._parameterNode)
                    self.logic.showResults(results)
                    self.ui.statusLabel.text = _("Found {count} lesion(s) in {seconds:.0f} s.").format(
                        count=len(results.lesionRows), seconds=run.seconds)
            elif failure.kind is background.FailureKind.CANCELLED:
                self.ui.statusLabel.text = _("Cancelled.")
            elif failure.cpu_may_help and run.request.device != "cpu":
                rerunOnCpu = slicer.util.confirmYesNoDisplay(
                    failure.message + "\n\n" + _("Run the segmentation on the CPU instead? It is slower."),
                    windowTitle=failure.kind.value)
                self.ui.statusLabel.text = failure.message
            else:
                self.ui.statusLabel.text = failure.message
                slicer.util.errorDisplay(failure.message, windowTitle=_("Breast segmentation failed"),
                                         detailedText="\n".join(run.lines[-200:]))
        finally:
            if rerunOnCpu:
                self.startRun(dataclasses.replace(run.request, device="cpu"))
            else:
                run.cleanup()
                self.updateGui()

    def onLesionSelected(self) -> None:
        tableNode = self._parameterNode.lesionTable if self._parameterNode else None
        selected = self.ui.lesionTableView.selectionModel().selectedIndexes()
        if tableNode and selected:
            row = self.ui.lesionTableView.sortFilterProxyModel().mapToSource(selected[0]).row()
            self.logic.jumpToLesion(tableNode, row)


#
# Running ``breastseg segment``
#


class SegmentationRun:
    """One ``breastseg segment`` process: progress and log lines are read by a timer, so the GUI never blocks."""

    POLL_INTERVAL_MS = 200
    #: After Cancel, Python gets this long to clean up before the process group is killed.
    KILL_AFTER_S = 5.0

    def __init__(self, request, temporaryFolder, onProgress=None, onFinished=None):
        self.request = request
        self.temporaryFolder = temporaryFolder
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.lines = []
        self.failure = None
        self.cancelRequested = False
        self._cancelTime = None
        self._startTime = time.monotonic()
        self.seconds = 0.0
        arguments = background.segment_arguments(request)
        logging.info(f"Breast segmentation: breastseg {' '.join(arguments)}")
        self._process = background.BackgroundProcess(
            background.python_command(pythonSlicerExecutable(), arguments),
            env=slicer.util.startupEnvironment(),
            cwd=background.library_parent_dir(),
        )
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.poll)
        self._timer.start()

    def handleLine(self, line: str) -> None:
        event = background.parse_progress_line(line)
        if event is None:
            self.lines.append(line)
            logging.info(line)
        elif self.onProgress:
            self.onProgress(event)

    def poll(self) -> None:
        for line in self._process.read_lines():
            self.handleLine(line)
        if self._cancelTime is not None and time.monotonic() - self._cancelTime > self.KILL_AFTER_S:
            self._process.kill()
        if self._process.finished():
            self._finish()

    def waitForCompletion(self) -> None:
        """Block until the process ends (for tests and scripts); progress is still reported."""
        self._timer.stop()
        background.run_to_completion(self._process, self.handleLine)
        self._finish()

    def _finish(self) -> None:
        self._timer.stop()
        for line in self._process.read_lines():
            self.handleLine(line)
        self.seconds = time.monotonic() - self._startTime
        self.failure = background.describe_failure(self._process.returncode, self.lines, self.cancelRequested)
        logging.info(f"Breast segmentation ended with code {self._process.returncode} after {self.seconds:.1f} s")
        if self.onFinished:
            self.onFinished(self)

    def cancel(self) -> None:
        """Ask the process to stop; it is killed if it has not ended after :attr:`KILL_AFTER_S`."""
        if not self.cancelRequested:
            self.cancelRequested = True
            self._cancelTime = time.monotonic()
            self._process.terminate()

    def cleanup(self) -> None:
        """Remove the inputs and outputs written for this run (the results are in the scene by then)."""
        shutil.rmtree(self.temporaryFolder, ignore_errors=True)


def pythonSlicerExecutable() -> str:
    """PythonSlicer: Slicer's Python with Slicer's packages (inside Slicer, sys.executable is the application)."""
    executable = shutil.which("PythonSlicer")
    if not executable:
        raise RuntimeError(_("PythonSlicer was not found on the PATH of this Slicer."))
    return executable


@dataclasses.dataclass
class SegmentationResults:
    """The nodes created from one run's outputs (the tables of the evaluation only with a reference)."""

    segmentation: vtkMRMLSegmentationNode
    lesionTable: vtkMRMLTableNode
    lesionRows: list
    subtraction: vtkMRMLScalarVolumeNode
    preVolume: vtkMRMLScalarVolumeNode
    postVolume: vtkMRMLScalarVolumeNode
    overlapTable: vtkMRMLTableNode = None
    detectionTable: vtkMRMLTableNode = None


#
# BreastSegmentationLogic
#

#: Attribute of a volume made of a sequence's frame: "<sequence node ID>:<frame>".
FRAME_ATTRIBUTE = "BreastSegmentation.SequenceFrame"


class BreastSegmentationLogic(ScriptedLoadableModuleLogic):
    """Moves data between the scene and BreastSegmentationLib; usable without the widget (tests, batch)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._gpuNames = None

    def getParameterNode(self):
        return BreastSegmentationParameterNode(super().getParameterNode())

    # Python packages

    def missingPackages(self) -> list:
        return background.missing_requirements([background.TORCH_REQUIREMENT, *background.PIP_REQUIREMENTS])

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what the segmentation needs: torch through the PyTorch extension (the right CUDA build), the
        rest with pip while Slicer's own numpy, SimpleITK and VTK are pinned. Returns False if the user declined.
        """
        missing = self.missingPackages()
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("Breast segmentation needs Python packages that are not installed yet. Installing them needs a "
              "network connection and may take several minutes. Install now?"),
            windowTitle=_("Install Python packages"),
            detailedText=_("Packages to install: {packages}").format(packages=", ".join(missing)),
        ):
            return False
        if background.TORCH_REQUIREMENT in missing:
            self._installTorch()
        packages = [requirement for requirement in missing if requirement != background.TORCH_REQUIREMENT]
        if packages:
            constraints = Path(slicer.util.tempDirectory()) / "slicer-own-packages.txt"
            constraints.write_text(background.pip_constraints(), encoding="utf-8")
            slicer.util.pip_install(["-c", str(constraints), *packages])
        self._gpuNames = None
        return True

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("Install the PyTorch extension from the Extensions Manager, then restart Slicer."))
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=background.TORCH_VERSION_SPECIFIER)
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed. Use the PyTorch Utils module to install it."))

    def gpuNames(self) -> list:
        if self._gpuNames is None:
            self._gpuNames = background.cuda_device_names()
        return self._gpuNames

    # Inputs

    def guessPrePostVolumes(self):
        """The loaded volumes most likely to be the pre- and post-contrast phases (None when unsure). A DCE series
        loaded as a volume sequence (one series holding every phase, as GE and Philips store it) gives its first two
        frames, copied into volumes of their own."""
        volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not node.IsA("vtkMRMLLabelMapVolumeNode") and not self._isSequenceProxy(node)]
        candidates = [scene.volume_candidate(node.GetID(), node.GetName(), self._dicomTags(node)) for node in volumes]
        preId, postId = scene.choose_pre_post(candidates)
        if not (preId and postId) and (sequence := self._dceSequence()):
            return tuple(self._frameVolume(sequence, phase) for phase in scene.PHASE_FRAMES)
        return (slicer.mrmlScene.GetNodeByID(preId) if preId else None,
                slicer.mrmlScene.GetNodeByID(postId) if postId else None)

    @staticmethod
    def _isSequenceProxy(volumeNode) -> bool:
        """Whether the volume shows the current frame of a sequence: which phase it holds depends on the browser."""
        return slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volumeNode) is not None

    @staticmethod
    def _dceSequence():
        """The one loaded volume sequence that can be the DCE series, or None."""
        sequences = [node for node in slicer.util.getNodesByClass("vtkMRMLSequenceNode")
                     if node.GetNumberOfDataNodes() and node.GetNthDataNode(0).IsA("vtkMRMLScalarVolumeNode")
                     and not node.GetNthDataNode(0).IsA("vtkMRMLLabelMapVolumeNode")]
        candidates = [scene.SequenceCandidate(node.GetID(), node.GetName(), node.GetNumberOfDataNodes(),
                                              node.GetAttribute(scene.FRAME_TAG_ATTRIBUTE) or "")
                      for node in sequences]
        key = scene.choose_dce_sequence(candidates)
        return slicer.mrmlScene.GetNodeByID(key) if key else None

    @staticmethod
    def _frameVolume(sequenceNode, phase: str):
        """The volume holding the frame of ``phase`` of a DCE sequence: made once (a copy, so that browsing the
        sequence leaves the input as it is) and found again by its attribute."""
        frame = scene.PHASE_FRAMES[phase]
        origin = f"{sequenceNode.GetID()}:{frame}"
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(FRAME_ATTRIBUTE) == origin:
                return node
        data = sequenceNode.GetNthDataNode(frame)
        volume = slicer.mrmlScene.AddNewNodeByClass(data.GetClassName(),
                                                    scene.frame_volume_name(sequenceNode.GetName(), phase))
        volume.CopyContent(data)
        volume.SetAttribute(FRAME_ATTRIBUTE, origin)
        volume.CreateDefaultDisplayNodes()
        return volume

    @staticmethod
    def _dicomTags(volumeNode) -> dict:
        instanceUids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not instanceUids or database is None:
            return {}
        return {tag: database.instanceValue(instanceUids[0], tag) for tag in scene.DICOM_TAGS.values()}

    def prepareRequest(self, parameters, device=None):
        """Write the inputs into a new temporary folder and return the ``segment`` request that reads them."""
        folder = Path(slicer.util.tempDirectory("BreastSegmentation"))
        pre = self._exportNode(parameters.preContrastVolume, folder / "pre.nii")
        post = self._exportNode(parameters.postContrastVolume, folder / "post.nii")
        reference = None
        if parameters.referenceSegmentation:
            reference = self._exportReference(parameters.referenceSegmentation, parameters.preContrastVolume,
                                              folder / "reference.nii.gz")
        return background.SegmentRequest(
            out_dir=folder / "results", pre=pre, post=post, reference=reference,
            device=device or parameters.device,
            models=parameters.userModelsFolder if parameters.useUserModels else None,
            threshold=parameters.threshold,
            mixed_precision=parameters.mixedPrecision,
        )

    @staticmethod
    def _exportNode(node, path: Path) -> Path:
        # A fresh properties dict each call: exportNode stores the file format in the dict it is given.
        if not slicer.util.exportNode(node, str(path), properties={}, world=True):
            raise RuntimeError(_("Could not write {name} to {path}.").format(name=node.GetName(), path=path))
        return path

    def _exportReference(self, segmentationNode, referenceVolume, path: Path) -> Path:
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            if not slicer.modules.segmentations.logic().ExportVisibleSegmentsToLabelmapNode(
                    segmentationNode, labelmapNode, referenceVolume):
                raise RuntimeError(_("Could not export the reference segmentation {name}.").format(
                    name=segmentationNode.GetName()))
            return self._exportNode(labelmapNode, path)
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)

    # Running

    def startSegmentation(self, request, onProgress=None, onFinished=None) -> SegmentationRun:
        """Start ``breastseg segment`` in the background; ``onFinished(run)`` is called when it has ended."""
        return SegmentationRun(request, request.out_dir.parent, onProgress, onFinished)

    def segment(self, parameters, device=None) -> SegmentationResults:
        """Segment and load the results, blocking until done (tests and scripts)."""
        run = self.startSegmentation(self.prepareRequest(parameters, device))
        try:
            run.waitForCompletion()
            if run.failure is not None:
                raise RuntimeError(run.failure.message)
            return self.loadResults(run.request, parameters)
        finally:
            run.cleanup()

    # Results

    def loadResults(self, request, parameters) -> SegmentationResults:
        """Create the segmentation, subtraction and table nodes from a finished run; record them in ``parameters``."""
        outputs = scene.read_segment_outputs(request.out_dir)
        preVolume, postVolume = parameters.preContrastVolume, parameters.postContrastVolume
        baseName = preVolume.GetName()
        segmentation = self.createSegmentation(outputs, f"{baseName} breast segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(preVolume)
        subtraction = self.addVolume(scene.subtraction_image(read_image(request.pre), read_image(request.post)),
                                     f"{baseName} subtraction")
        results = SegmentationResults(
            segmentation=segmentation,
            lesionTable=self.createTable(scene.lesion_table(outputs.lesion_rows), f"{baseName} lesions"),
            lesionRows=outputs.lesion_rows,
            subtraction=subtraction,
            preVolume=preVolume,
            postVolume=postVolume,
        )
        if outputs.metrics is not None:
            results.overlapTable = self.createTable(scene.overlap_table(outputs.metrics), f"{baseName} overlap")
            results.detectionTable = self.createTable(scene.detection_table(outputs.metrics),
                                                      f"{baseName} lesion detection")
        parameters.outputSegmentation = segmentation
        parameters.lesionTable = results.lesionTable
        parameters.overlapTable = results.overlapTable
        parameters.detectionTable = results.detectionTable
        return results

    @staticmethod
    def addVolume(image, name: str):
        kji, ijkToRas = kji_from_image(image)
        return slicer.util.addVolumeFromArray(kji, ijkToRas, name)

    def createSegmentation(self, outputs, name: str):
        """A segmentation node with the "Breast" segment and one segment per lesion, with terminology and colours."""
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
        for labelmap in (scene.breast_labelmap(outputs.breast), scene.lesion_labelmap(outputs.lesions)):
            self._importLabelmap(labelmap, segmentationNode)
        segmentationNode.CreateClosedSurfaceRepresentation()
        return segmentationNode

    @staticmethod
    def _importLabelmap(labelmap, segmentationNode) -> None:
        if not labelmap.segments:
            return
        labelmapNode = slicer.util.addVolumeFromArray(labelmap.kji, labelmap.ijk_to_ras, labelmap.name,
                                                      nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentIds = vtk.vtkStringArray()
        for segmentId in labelmap.segment_ids():
            segmentIds.InsertNextValue(segmentId)
        try:
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
                    labelmapNode, segmentationNode, segmentIds):
                raise RuntimeError(_("Could not import the {name} label map.").format(name=labelmap.name))
        finally:
            slicer.mrmlScene.RemoveNode(labelmapNode)
        displayNode = segmentationNode.GetDisplayNode()
        for definition in filter(None, labelmap.segments):
            segment = segmentationNode.GetSegmentation().GetSegment(definition.segment_id)
            segment.SetName(definition.name)
            segment.SetColor(*definition.color)
            segment.SetTag(segment.GetTerminologyEntryTagName(), definition.terminology_string)
            displayNode.SetSegmentOpacity3D(definition.segment_id, definition.opacity_3d)

    @staticmethod
    def createTable(columns, name: str):
        """A table node holding library table columns, with their titles and units."""
        arrayClasses = {scene.INTEGER: vtk.vtkIntArray, scene.REAL: vtk.vtkDoubleArray, scene.TEXT: vtk.vtkStringArray}
        tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
        for column in columns:
            array = arrayClasses[column.kind]()
            array.SetName(column.name)
            for value in column.values:
                array.InsertNextValue(value)
            tableNode.AddColumn(array)
            tableNode.SetColumnTitle(column.name, column.title)
            if column.unit:
                tableNode.SetColumnUnitLabel(column.name, column.unit)
        tableNode.SetUseColumnTitleAsColumnHeader(True)
        tableNode.SetLocked(True)
        return tableNode

    @staticmethod
    def showResults(results) -> None:
        """Pre, post and subtraction side by side (axial) with the segmentation over each, surfaces in 3-D."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (batch)
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        for viewName, volume in zip(("Red", "Yellow", "Green"),
                                    (results.preVolume, results.postVolume, results.subtraction)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            sliceWidget.mrmlSliceNode().SetOrientationToAxial()
            sliceWidget.mrmlSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
            sliceWidget.sliceLogic().FitSliceToAll()
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    @staticmethod
    def jumpToLesion(tableNode, row: int) -> None:
        """Centre every slice view on the centroid of the lesion in ``row`` of a lesion table."""
        centroid = [float(tableNode.GetCellText(row, tableNode.GetColumnIndex(name)))
                    for name in scene.CENTROID_COLUMNS]
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *centroid, slicer.vtkMRMLSliceNode.CenteredJumpSlice)


#
# BreastSegmentationTest
#


class BreastSegmentationTest(ScriptedLoadableModuleTest):
    """Runs the bundled sample end to end (CPU) and checks the segments and tables created."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sampleEndToEnd()
        self.setUp()
        self.test_dceSequenceGivesItsFirstTwoFrames()

    def test_sampleEndToEnd(self):
        logic = BreastSegmentationLogic()
        self.delayDisplay("Installing missing Python packages")
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))

        sample = resources.sample_dir()
        parameters = logic.getParameterNode()
        parameters.preContrastVolume = slicer.util.loadVolume(str(sample / "pre.nii.gz"))
        parameters.postContrastVolume = slicer.util.loadVolume(str(sample / "post.nii.gz"))
        self.assertEqual(logic.guessPrePostVolumes(), (parameters.preContrastVolume, parameters.postContrastVolume))

        self.delayDisplay("Segmenting the sample")
        results = logic.segment(parameters, device="cpu")
        self.checkSegmentation(results)
        self.assertGreater(len(results.lesionRows), 0, "the bundled sample is expected to show lesions")
        self.assertEqual(results.lesionTable.GetNumberOfRows(), len(results.lesionRows))
        self.assertEqual(parameters.lesionTable, results.lesionTable)
        self.assertIsNone(results.overlapTable)

        self.delayDisplay("Segmenting again with the first lesions as reference")
        results.segmentation.GetDisplayNode().SetSegmentVisibility(scene.BREAST_SEGMENT.segment_id, False)
        parameters.referenceSegmentation = results.segmentation
        evaluated = logic.segment(parameters, device="cpu")
        dice = float(evaluated.overlapTable.GetCellText(0, evaluated.overlapTable.GetColumnIndex("value")))
        self.assertAlmostEqual(dice, 1.0, places=6)
        self.assertEqual(evaluated.overlapTable.GetCellText(0, 0), "Dice")
        self.assertGreater(evaluated.detectionTable.GetNumberOfRows(), 0)
        self.delayDisplay("Test passed")

    def test_dceSequenceGivesItsFirstTwoFrames(self):
        """A DCE series loaded as one volume sequence (as the DICOM module loads GE and Philips multi-phase series):
        its first two frames become the inputs, copied once; the sequence's proxy volume is never chosen."""
        logic = BreastSegmentationLogic()
        sample = resources.sample_dir()
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "Ax DCE")
        sequence.SetAttribute(scene.FRAME_TAG_ATTRIBUTE, "TriggerTime")
        expected = []
        for index, name in enumerate(("pre.nii.gz", "post.nii.gz", "post.nii.gz")):
            volume = slicer.util.loadVolume(str(sample / name))
            expected.append(slicer.util.arrayFromVolume(volume).copy())
            sequence.SetDataNodeAtValue(volume, str(index))
            slicer.mrmlScene.RemoveNode(volume)
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "Ax DCE browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())

        pre, post = logic.guessPrePostVolumes()
        self.assertEqual(pre.GetName(), scene.frame_volume_name("Ax DCE", "pre-contrast"))
        self.assertEqual(post.GetName(), scene.frame_volume_name("Ax DCE", "post-contrast"))
        self.assertTrue((slicer.util.arrayFromVolume(pre) == expected[0]).all())
        self.assertTrue((slicer.util.arrayFromVolume(post) == expected[1]).all())
        self.assertEqual(logic.guessPrePostVolumes(), (pre, post))  # found again, not copied twice
        self.delayDisplay("Test passed")

    def checkSegmentation(self, results):
        segmentation = results.segmentation.GetSegmentation()
        breast = segmentation.GetSegment(scene.BREAST_SEGMENT.segment_id)
        self.assertEqual(breast.GetName(), "Breast")
        self.assertEqual(breast.GetTag(breast.GetTerminologyEntryTagName()), scene.BREAST_SEGMENT.terminology_string)
        breastVoxels = slicer.util.arrayFromSegmentBinaryLabelmap(
            results.segmentation, scene.BREAST_SEGMENT.segment_id, results.preVolume)
        self.assertGreater(int(breastVoxels.sum()), 0)
        for row in results.lesionRows:
            lesion = segmentation.GetSegment(scene.lesion_segment(row.lesion_id).segment_id)
            self.assertIsNotNone(lesion, f"no segment for lesion {row.lesion_id}")
            self.assertEqual(lesion.GetTag(lesion.GetTerminologyEntryTagName()),
                             scene.lesion_segment(row.lesion_id).terminology_string)
        self.assertEqual(segmentation.GetNumberOfSegments(), 1 + len(results.lesionRows))
